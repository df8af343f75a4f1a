"""What is protected, who asks, and whether a record may be revealed. Pure: no I/O."""
