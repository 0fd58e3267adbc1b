"""Guest side of the lab images: PID 1 source and kernel config fragments (data files)."""
