"""The DLE's off-chain roles: archive node (Proof of History, waiting pool, roulette), and later the
creator, witness and validator. Protocol logic here does no I/O: storage and transport are handed in."""
