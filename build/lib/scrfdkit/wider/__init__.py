"""WIDER FACE: the dataset files, the official and rough metrics, error analysis, and whole evaluations."""
