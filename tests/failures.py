"""What a user sees when a command refuses its input: one line, no traceback."""

from __future__ import annotations


def one_line_failure(result, *fragments) -> str:
    """A non-zero exit with one ``Error:`` line holding every fragment, and no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
