"""Running stages elsewhere: the Lambda Cloud API client and its local double, instance
lifecycle, and the Fabric/rsync stage executor behind `fractal run` and `fractal lambda`.
See docs/lambda.md. Importing this package imports nothing heavy (no Fabric)."""
