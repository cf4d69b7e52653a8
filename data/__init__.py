"""Sample data (shopstream generate writes it): the default input of shopstream demo."""
