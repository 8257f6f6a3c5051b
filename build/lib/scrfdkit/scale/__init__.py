"""Jobs on a Ray cluster: the photo job of scrfd.py, and any list of tasks (WIDER FACE evaluations)."""
