"""Rooms: a shared list that participants (holders of a join link) change together, live on every api process."""
