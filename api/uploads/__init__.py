"""Receiving uploads: the streaming multipart spooler, content sniffing and client file names."""
