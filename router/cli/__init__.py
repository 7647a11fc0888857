"""The `shoal` admin CLI: one module per noun (rpk-style `shoal <noun> <verb>`)."""
