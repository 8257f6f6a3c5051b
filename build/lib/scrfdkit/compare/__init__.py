"""Other face detectors behind SCRFD's interface, and the comparison report."""
