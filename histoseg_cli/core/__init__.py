"""The core library every histoseg command shares. It never imports the CLI layer."""
