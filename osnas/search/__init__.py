"""The search: spaces (data), relaxations, the weight-sharing supernet, the architect, the loop."""
