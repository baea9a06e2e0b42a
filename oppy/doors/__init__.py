"""oppy's front doors: the listeners applications reach it through (SocksPort and the others), opened and
closed from their PortConfig lines, each with its own isolation settings."""
