"""Files: the upload spool and content-addressed storage."""
