"""Logic shared by the collector and the Dagster half, below both: the gap model
(:mod:`.gaps`), the universe store (:mod:`.universe`), gap recovery planning and execution
(:mod:`.recovery`), and UTC day windows (:mod:`.days`). Nothing here imports ``orchestration``.
"""
