"""Payment-provider plugins: the contract (base, errors), money, and one module per provider."""
