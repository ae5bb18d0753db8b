package cache

// ForgetSentSelections empties the table of the selections sent, as if
// every selection clients hold had been evicted from it.
func ForgetSentSelections(c *Cache) {
	c.recent.mu.Lock()
	defer c.recent.mu.Unlock()
	c.recent.cur, c.recent.prev, c.recent.size = nil, nil, 0
}
