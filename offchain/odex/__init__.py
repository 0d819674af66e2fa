"""CoNET-oDEX off chain: signed orders (`order`) and the deterministic price-time matching program
(`book`) that the order book's DLE group re-executes; settlement of fills on receipt chains."""
