"""The foundation every stage stands on: config parsing, files and atomic writes, seeding,
storage URLs, registries, stage folders, the device and torchrun environment, and the CLI
plumbing. It imports no stage, no shard-set code and no orchestrator (see ARCHITECTURE.md)."""
