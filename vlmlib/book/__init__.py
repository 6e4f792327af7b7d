"""The book: the runner (plan, manifest, execution), the generated pages, the command line."""
