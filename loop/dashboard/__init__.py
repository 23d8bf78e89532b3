"""The operator dashboard (`cai dashboard`): pages, a JSON API and controls over one run's store."""
