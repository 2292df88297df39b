"""procure.llm"""
