"""What every part shares and no part owns: the console (progress bars, quiet libraries), the run
lock, atomic writes and integrity records, plotting, the host's CPU features (`host`) and optional
dependencies (`extras`).

May import: `errors` only."""
