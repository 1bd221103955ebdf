"""The synthetic ODE lab: closed-form denoisers, reference trajectories, samplers, reference engine."""
