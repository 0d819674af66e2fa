"""The only code that talks to the chain: address books, deployment, contract access."""
