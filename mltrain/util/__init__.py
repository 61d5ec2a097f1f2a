"""Small tools with no domain logic: file trees handled through directory fds, archive extraction."""
