"""What every part shares and no part owns: the console (progress bars, quiet libraries), the run
lock, atomic writes and integrity records, and plotting.

May import: `errors` only."""
