"""Static files served by the spaces gateway: the demo page and its mediasoup-client bundle."""
