"""Studies that chose and checked the defaults: the threshold, removal, reweighting,
extension and linearisation studies."""
