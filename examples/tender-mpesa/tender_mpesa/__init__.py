"""The mpesa provider plugin for Tender."""
