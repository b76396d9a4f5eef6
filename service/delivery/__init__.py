"""Events out: publishing to the log and outbox, signing, the dispatcher, the sender, retries."""
