"""Services the engine drives: voicemail email, the mailbox menu, call media jobs,
trunk registration, message waiting, time zones."""
