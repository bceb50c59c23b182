"""Operator and development tools around the metering functions: replay, measurement, local stacks.

Nothing here ships in the Lambda layer; the functions never import it."""
