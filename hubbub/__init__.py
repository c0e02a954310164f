"""hubbub: a horizontally scalable RustDesk ID/relay server and Wired spaces host."""

__version__ = "0.1.0"
