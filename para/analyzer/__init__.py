"""The analyzer: reads .para files and explains where the time went."""
