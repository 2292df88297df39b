"""procure.tasks"""
