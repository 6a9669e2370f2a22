"""onestep coupler plugin: noise/data pairings for flow-type objectives (independent, minibatch-ot, online, semidiscrete-ot)."""
