"""Local development networks the project starts itself."""
