"""A Telegram bot that posts reelhook videos to chats."""
