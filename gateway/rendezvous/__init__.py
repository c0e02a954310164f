"""The RustDesk ID/rendezvous server (hbbs replacement) inside the gateway."""
