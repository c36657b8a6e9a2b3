"""Engine output in the shapes clients parse: one renderer per endpoint, for whole answers and chunks."""
