"""On-chain side of meshcompute: compiled contract artifacts and helpers to use them."""
