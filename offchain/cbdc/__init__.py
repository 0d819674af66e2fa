"""The CBDC role: stakes, registers, and fills the orders CoNETCash buyers place."""
