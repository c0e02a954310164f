"""Gateway role: client signalling (RustDesk ID server, spaces). Holds only its own sockets."""
