"""Active-contact metering and overusage billing: the shared package of every function and the CLI."""
