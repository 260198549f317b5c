"""Tools that run on the store's gateway or an integrator's laptop, not on the camera."""
