"""One module per benchmark scenario; each exposes ``main(argv)``."""
