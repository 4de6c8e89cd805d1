"""SciTags: fireflies for every transfer and IPv6 flow labels on the sockets se opens."""
