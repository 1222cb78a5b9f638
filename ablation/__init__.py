"""ablation: turn chosen components off or edit them, reversibly (hooks) or permanently (weights)."""
