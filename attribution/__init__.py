"""attribution: which MLP neurons and attention heads carry this knowledge? (reads a model, never changes it)"""
