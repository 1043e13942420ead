raise ImportError("this connector is broken on purpose (a dependency it needs is missing)")
