"""Running stages elsewhere: the Lambda Cloud API client, instance lifecycle, and the
Fabric/rsync stage executor that fractal.dispatch hands remote stages to; `fractal lambda`.
See docs/lambda.md. Importing this package imports nothing heavy (no Fabric)."""
